// Everything the CPU kernel includes. ISA-specific translation units include this first, then their
// target pragma, so no inline function from these headers is compiled for a wider ISA than baseline.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <type_traits>
#include <vector>

#include "../fused_gradcam.h"
#include "../fused_gradcam_op.h"
