/* emulator stand-in for CUDA's cuda_bf16.h: everything is in cuda_emu.h */
#include "../cuda_emu.h"
