// Blending index builder (placeholder registration; filled in by the blended dataset work).
#include "helpers.h"
void register_blending_helpers(pybind11::module_& m) { (void)m; }
