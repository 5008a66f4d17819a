// Registration hooks of the dataset index helpers; one function per source file.
#pragma once
#include <pybind11/pybind11.h>

void register_gpt_helpers(pybind11::module_& m);       // gpt_helpers.cpp
void register_blending_helpers(pybind11::module_& m);  // blending.cpp
void register_bert_helpers(pybind11::module_& m);      // bert_helpers.cpp
void register_metric_helpers(pybind11::module_& m);    // metric_helpers.cpp
