#ifndef TOLLGATE_CFASTCGI_SHIM_H
#define TOLLGATE_CFASTCGI_SHIM_H

#include <fcgiapp.h>
#include <poll.h>
#include <pthread.h>

/// POLLRDHUP needs _GNU_SOURCE, which Swift's Glibc module does not define.
static const short tg_pollrdhup = 0x2000;

/// Reads the FastCGI request arriving on `fd`, a connection Tollgate accepted itself, into
/// `request`. libfcgi's FCGX_Accept_r skips its own accept when ipcFd is already open, and its
/// opening FCGX_Finish_r keeps that descriptor when keepConnection is set; the BEGIN_REQUEST
/// record then overwrites keepConnection with nginx's own flag. Returns FCGX_Accept_r's code.
static inline int tg_fcgx_read_request(FCGX_Request *_Nonnull request, int fd) {
    request->ipcFd = fd;
    request->keepConnection = 1;
    return FCGX_Accept_r(request);
}

static inline int tg_fcgx_descriptor(const FCGX_Request *_Nonnull request) {
    return request->ipcFd;
}

#endif
