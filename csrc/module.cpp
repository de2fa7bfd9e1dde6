// The Python module fastgan._C: a bare module whose import loads this library, which runs the
// TORCH_LIBRARY_IMPL blocks of the csrc/bind_<op>.cpp files (registering the CUDA kernels of the
// fastgan_cuda::* ops, whose schemas fastgan/_ext.py defines). The JIT build loads the same
// library with torch.ops.load_library; CMake defines FASTGAN_NO_PYTHON_MODULE (no Python here).
#ifndef FASTGAN_NO_PYTHON_MODULE
#include <Python.h>

// Built by torch's cpp_extension, TORCH_EXTENSION_NAME is the module name.
#ifndef TORCH_EXTENSION_NAME
#define TORCH_EXTENSION_NAME _C
#endif
#define FASTGAN_CAT_(a, b) a##b
#define FASTGAN_CAT(a, b) FASTGAN_CAT_(a, b)
#define FASTGAN_STR_(a) #a
#define FASTGAN_STR(a) FASTGAN_STR_(a)

static PyModuleDef fastgan_module_def = {
    PyModuleDef_HEAD_INIT,
    FASTGAN_STR(TORCH_EXTENSION_NAME),
    "fastgan CUDA kernels. Importing this module registers the CUDA kernels of the "
    "fastgan_cuda::* ops (schemas: fastgan._ext).",
    -1,      // m_size
    nullptr, // m_methods
    nullptr, // m_slots
    nullptr, // m_traverse
    nullptr, // m_clear
    nullptr, // m_free
};

PyMODINIT_FUNC FASTGAN_CAT(PyInit_, TORCH_EXTENSION_NAME)(void) {
  return PyModule_Create(&fastgan_module_def);
}
#endif
