#ifndef TOLLGATE_CFASTCGI_SHIM_H
#define TOLLGATE_CFASTCGI_SHIM_H

// The FastCGI protocol as libfcgi defines it: record types, roles, flags and protocol statuses.
// Tollgate's transport reads and writes the records itself, from its event loop, since
// libfcgi's own accept and read calls block a thread per request.
#include <fastcgi.h>

#endif
