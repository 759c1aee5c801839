#ifndef TOLLGATE_CPOSTGRES_SHIM_H
#define TOLLGATE_CPOSTGRES_SHIM_H

#include <libpq-fe.h>

#endif
