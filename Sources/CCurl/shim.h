#ifndef TOLLGATE_CCURL_SHIM_H
#define TOLLGATE_CCURL_SHIM_H

#include <curl/curl.h>
#include <stdint.h>

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

// The event loop drives many transfers at once through libcurl's multi socket interface, whose
// curl_multi_setopt is variadic too.

typedef int (*tg_curl_socket_callback)(CURL *_Nullable easy, curl_socket_t socket, int what,
                                       void *_Nullable context, void *_Nullable socketContext);
typedef int (*tg_curl_timer_callback)(CURLM *_Nullable multi, long timeoutMilliseconds, void *_Nullable context);

static inline CURLMcode tg_curl_multi_set_socket_callback(CURLM *_Nonnull multi, tg_curl_socket_callback _Nonnull callback,
                                                          void *_Nullable context) {
    CURLMcode code = curl_multi_setopt(multi, CURLMOPT_SOCKETFUNCTION, callback);
    return code != CURLM_OK ? code : curl_multi_setopt(multi, CURLMOPT_SOCKETDATA, context);
}

static inline CURLMcode tg_curl_multi_set_timer_callback(CURLM *_Nonnull multi, tg_curl_timer_callback _Nonnull callback,
                                                         void *_Nullable context) {
    CURLMcode code = curl_multi_setopt(multi, CURLMOPT_TIMERFUNCTION, callback);
    return code != CURLM_OK ? code : curl_multi_setopt(multi, CURLMOPT_TIMERDATA, context);
}

static inline CURLMcode tg_curl_multi_set_long(CURLM *_Nonnull multi, CURLMoption option, long value) {
    return curl_multi_setopt(multi, option, value);
}

static const size_t tg_curl_write_pause = CURL_WRITEFUNC_PAUSE;
static const int tg_curl_pause_continue = CURLPAUSE_CONT;
static const curl_socket_t tg_curl_socket_timeout = CURL_SOCKET_TIMEOUT;

#endif
