#ifndef TOLLGATE_CEVENTLOOP_SHIM_H
#define TOLLGATE_CEVENTLOOP_SHIM_H

// epoll's event struct is packed on x86_64, which Swift does not import usefully: these
// wrappers are how the event loop uses epoll, and how its threads get their names.

#include <pthread.h>
#include <stdint.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>

static const uint32_t tg_loop_readable = EPOLLIN;
static const uint32_t tg_loop_writable = EPOLLOUT;
static const uint32_t tg_loop_hang_up = EPOLLRDHUP;
static const uint32_t tg_loop_error = EPOLLERR | EPOLLHUP;
static const uint32_t tg_loop_exclusive = EPOLLEXCLUSIVE;

/// One ready descriptor, unpacked.
typedef struct {
    uint32_t events;
    int32_t fd;
} tg_loop_ready;

/// Adds (add != 0) or changes the interest in `fd`; its events come back with `fd`.
static inline int tg_loop_watch(int epoll, int fd, uint32_t events, int add) {
    struct epoll_event event = {.events = events, .data = {.fd = fd}};
    return epoll_ctl(epoll, add ? EPOLL_CTL_ADD : EPOLL_CTL_MOD, fd, &event);
}

static inline int tg_loop_unwatch(int epoll, int fd) {
    struct epoll_event event = {0};
    return epoll_ctl(epoll, EPOLL_CTL_DEL, fd, &event);
}

/// Waits like epoll_wait and copies at most `capacity` (up to 512) ready descriptors into `ready`.
static inline int tg_loop_wait(int epoll, tg_loop_ready *_Nonnull ready, int capacity, int timeoutMilliseconds) {
    struct epoll_event events[512];
    int count = epoll_wait(epoll, events, capacity < 512 ? capacity : 512, timeoutMilliseconds);
    for (int index = 0; index < count; index++) {
        ready[index].events = events[index].events;
        ready[index].fd = events[index].data.fd;
    }
    return count;
}

static inline int tg_loop_eventfd(void) {
    return eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
}

/// Accepts one connection, non-blocking and close-on-exec; -1 with errno as accept4 sets it.
static inline int tg_loop_accept(int listener) {
    return accept4(listener, 0, 0, SOCK_NONBLOCK | SOCK_CLOEXEC);
}

// glibc declares it only under _GNU_SOURCE, which must not be defined here: this module would then
// see the system headers differently from Swift's Glibc module, and the two would not build together.
extern int pthread_setname_np(pthread_t thread, const char *_Nonnull name);

/// Names a thread (at most 15 bytes), for `top -H` and profilers; 0 or an errno.
static inline int tg_thread_set_name(pthread_t thread, const char *_Nonnull name) {
    return pthread_setname_np(thread, name);
}

#endif
