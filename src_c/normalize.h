/* normfast: forward normalization kernels (see normalize_t.h). */
#ifndef NF_NORMALIZE_H
#define NF_NORMALIZE_H
#include "moments.h"

#define NF_TEMPLATE "normalize_t.h"
#include "instantiate.h"

#endif
