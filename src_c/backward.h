/* normfast: row-wise backward kernels (see backward_t.h).  The channel-wise
 * backward reuses nf_reduce4d (kind 2) and nf_apply4d. */
#ifndef NF_BACKWARD_H
#define NF_BACKWARD_H
#include "normalize.h"

#define NF_TEMPLATE "backward_t.h"
#include "instantiate.h"
#include "dispatch.h"         /* the type-generic entry points: nf_name(dt, ...) */
#define nf_rows_backward(dt, ...) NF_DISPATCH(dt, nf_rows_backward, __VA_ARGS__)

#endif
