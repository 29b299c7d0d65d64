// shim.h: exposes Open MPI's C interface to Swift, with functions for the handles mpi.h defines as macros.
#include <mpi.h>

// MPI_COMM_WORLD, MPI_FLOAT, MPI_SUM and the rest are macros over addresses of globals, which
// Swift cannot import: these return them.
static inline MPI_Comm sbp_mpi_world(void) { return MPI_COMM_WORLD; }
static inline MPI_Datatype sbp_mpi_float(void) { return MPI_FLOAT; }
static inline MPI_Datatype sbp_mpi_double(void) { return MPI_DOUBLE; }
static inline MPI_Datatype sbp_mpi_uint64(void) { return MPI_UINT64_T; }
static inline MPI_Datatype sbp_mpi_char(void) { return MPI_CHAR; }
static inline MPI_Op sbp_mpi_sum(void) { return MPI_SUM; }
static inline MPI_Op sbp_mpi_min(void) { return MPI_MIN; }
static inline MPI_Op sbp_mpi_max(void) { return MPI_MAX; }
static inline void *sbp_mpi_in_place(void) { return MPI_IN_PLACE; }
static inline MPI_Request sbp_mpi_request_null(void) { return MPI_REQUEST_NULL; }
static inline MPI_Status *sbp_mpi_status_ignore(void) { return MPI_STATUS_IGNORE; }
static inline int sbp_mpi_success(void) { return MPI_SUCCESS; }
static inline int sbp_mpi_thread_funneled(void) { return MPI_THREAD_FUNNELED; }
// Errors come back as return codes instead of aborting inside Open MPI, so that sbpc can say
// what happened (a rank that died) in its own words.
static inline int sbp_mpi_errors_return(void) { return MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN); }
