// GPT sample index builder (placeholder registration; filled in by the GPT dataset work).
#include "helpers.h"
void register_gpt_helpers(pybind11::module_& m) { (void)m; }
