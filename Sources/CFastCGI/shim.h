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

/// Takes the connection away from libfcgi once the request has been read and its output
/// flushed, so an event loop can finish the response: frees the request's streams and
/// parameters without closing the descriptor, which is returned; FCGX_Finish_r then finds
/// nothing left to write or close. `requestId` receives the FastCGI request id to answer with.
static inline int tg_fcgx_detach(FCGX_Request *_Nonnull request, int *_Nonnull requestId) {
    int fd = request->ipcFd;
    *requestId = request->requestId;
    FCGX_Free(request, 0);
    request->ipcFd = -1;
    return fd;
}

#endif
