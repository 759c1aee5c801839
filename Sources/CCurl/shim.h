#ifndef TOLLGATE_CCURL_SHIM_H
#define TOLLGATE_CCURL_SHIM_H

#include <curl/curl.h>

// curl_easy_setopt and curl_easy_getinfo are variadic, which Swift cannot call: these typed
// wrappers are the only way the upstream client touches them.

typedef size_t (*tg_curl_data_callback)(char *_Nonnull data, size_t size, size_t count, void *_Nullable context);

static inline CURLcode tg_curl_set_long(CURL *_Nonnull handle, CURLoption option, long value) {
    return curl_easy_setopt(handle, option, value);
}

static inline CURLcode tg_curl_set_string(CURL *_Nonnull handle, CURLoption option, const char *_Nullable value) {
    return curl_easy_setopt(handle, option, value);
}

static inline CURLcode tg_curl_set_pointer(CURL *_Nonnull handle, CURLoption option, void *_Nullable value) {
    return curl_easy_setopt(handle, option, value);
}

static inline CURLcode tg_curl_set_data_callback(CURL *_Nonnull handle, CURLoption option,
                                                 tg_curl_data_callback _Nullable callback) {
    return curl_easy_setopt(handle, option, callback);
}

static inline CURLcode tg_curl_set_off(CURL *_Nonnull handle, CURLoption option, curl_off_t value) {
    return curl_easy_setopt(handle, option, value);
}

static inline CURLcode tg_curl_get_long(CURL *_Nonnull handle, CURLINFO info, long *_Nonnull value) {
    return curl_easy_getinfo(handle, info, value);
}

static inline CURLcode tg_curl_get_double(CURL *_Nonnull handle, CURLINFO info, double *_Nonnull value) {
    return curl_easy_getinfo(handle, info, value);
}

static inline CURLcode tg_curl_share_set_lock(CURLSH *_Nonnull share, CURLSHoption option, long value) {
    return curl_share_setopt(share, option, value);
}

#endif
