#ifndef TOLLGATE_CPOSTGRES_SHIM_H
#define TOLLGATE_CPOSTGRES_SHIM_H

#include <libpq-fe.h>

// PG_DIAG_* are character-literal macros, which Swift does not import: typed wrappers instead.

/// The SQLSTATE of a failed result (five characters), or NULL.
static inline const char *_Nullable tollgate_pq_sqlstate(const PGresult *_Nonnull result) {
    return PQresultErrorField(result, PG_DIAG_SQLSTATE);
}

/// The primary, one-line message of a failed result (no DETAIL, which may quote row values), or NULL.
static inline const char *_Nullable tollgate_pq_primary_message(const PGresult *_Nonnull result) {
    return PQresultErrorField(result, PG_DIAG_MESSAGE_PRIMARY);
}

/// A notice processor that drops notices: libpq's default prints them on standard error, where
/// they would break Tollgate's one-line-per-event log format.
static inline void tollgate_pq_ignore_notice(void *_Nullable argument, const char *_Nullable message) {
    (void)argument;
    (void)message;
}

#endif
