// BERT sample mapping builder (placeholder registration; filled in by the BERT dataset work).
#include "helpers.h"
void register_bert_helpers(pybind11::module_& m) { (void)m; }
