# Cross-compiling the core, the kernels and their C tests for aarch64 on a
# Debian x86-64 host (gcc-aarch64-linux-gnu); .ci/run runs the tests under
# qemu-user:  qemu-aarch64 -L /usr/aarch64-linux-gnu ./test_kernels
# Only with -DOL_BUILD_MODULE=OFF: no aarch64 CPython is there to link.
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR aarch64)

set(OL_CROSS_TRIPLE aarch64-linux-gnu)
set(CMAKE_C_COMPILER ${OL_CROSS_TRIPLE}-gcc)
set(CMAKE_FIND_ROOT_PATH /usr/${OL_CROSS_TRIPLE})
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_PACKAGE ONLY)
# ctest runs the binaries through qemu-user, with the cross sysroot's
# loader and libc.
set(CMAKE_CROSSCOMPILING_EMULATOR qemu-aarch64 -L /usr/${OL_CROSS_TRIPLE})
