/* normfast: forward normalization kernels (see normalize_t.h). */
#ifndef NF_NORMALIZE_H
#define NF_NORMALIZE_H
#include "moments.h"
#include "apply_f32.h"

#define NF_TEMPLATE "normalize_t.h"
#include "instantiate.h"
#define NF_TEMPLATE "group_backward_t.h"
#include "instantiate.h"
#include "dispatch.h"         /* the type-generic entry points: nf_name(dt, ...) */
#define nf_apply4d(dt, ...) NF_DISPATCH(dt, nf_apply4d, __VA_ARGS__)
#define nf_rows_forward(dt, ...) NF_DISPATCH(dt, nf_rows_forward, __VA_ARGS__)
#define nf_rows_forward_T(dt, ...) NF_DISPATCH(dt, nf_rows_forward_T, __VA_ARGS__)
#define nf_rows_add_forward(dt, ...) NF_DISPATCH(dt, nf_rows_add_forward, __VA_ARGS__)
#define nf_samples_forward(dt, ...) NF_DISPATCH(dt, nf_samples_forward, __VA_ARGS__)
#define nf_group_backward(dt, ...) NF_DISPATCH(dt, nf_group_backward, __VA_ARGS__)

#endif
