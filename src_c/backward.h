/* normfast: row-wise backward kernels (see backward_t.h).  The channel-wise
 * backward reuses nf_reduce4d (kind 2) and nf_apply4d. */
#ifndef NF_BACKWARD_H
#define NF_BACKWARD_H
#include "normalize.h"

#define NF_TEMPLATE "backward_t.h"
#include "instantiate.h"

#endif
