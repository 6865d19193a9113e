# The ol_kernels static library: vector kernels on raw float32 pointers.
#
# Included from the top-level CMakeLists.txt, which defines OL_WARNINGS.
# Only the SIMD sources get -m flags, per source file: the library must
# run on any x86-64 CPU (dispatch.c checks CPUID before entering them),
# so nothing here may use -march=native or add -m flags to the target.
# On aarch64 neon.c needs no flag: Advanced SIMD is the baseline there.

set(_ol_kernels_dir ${CMAKE_CURRENT_LIST_DIR})

add_library(ol_kernels STATIC
  ${_ol_kernels_dir}/dispatch.c
  ${_ol_kernels_dir}/scalar.c
  ${_ol_kernels_dir}/topk.c
  ${_ol_kernels_dir}/quant_scalar.c
  ${_ol_kernels_dir}/bandwidth.c
)

if(CMAKE_SYSTEM_PROCESSOR MATCHES "^(x86_64|AMD64|amd64|i.86)$"
   AND CMAKE_C_COMPILER_ID MATCHES "GNU|Clang")
  target_sources(ol_kernels PRIVATE
    ${_ol_kernels_dir}/avx2.c
    ${_ol_kernels_dir}/avx512.c
    ${_ol_kernels_dir}/quant_avx2.c
    ${_ol_kernels_dir}/quant_avx512.c
  )
  set_source_files_properties(${_ol_kernels_dir}/avx2.c
    PROPERTIES COMPILE_OPTIONS "-mavx2;-mfma")
  set_source_files_properties(${_ol_kernels_dir}/avx512.c
    PROPERTIES COMPILE_OPTIONS "-mavx512f;-mavx2;-mfma")
  set_source_files_properties(${_ol_kernels_dir}/quant_avx2.c
    PROPERTIES COMPILE_OPTIONS "-mavx2;-mfma")
  set_source_files_properties(${_ol_kernels_dir}/quant_avx512.c
    PROPERTIES COMPILE_OPTIONS "-mavx512f;-mavx2;-mfma")
  target_compile_definitions(ol_kernels PRIVATE OL_HAVE_X86_SIMD=1)
elseif(CMAKE_SYSTEM_PROCESSOR MATCHES "^(aarch64|arm64|ARM64)$"
       AND CMAKE_C_COMPILER_ID MATCHES "GNU|Clang")
  # Linux reports aarch64, macOS arm64.  A universal2 build on macOS
  # (CMAKE_OSX_ARCHITECTURES with x86_64 too) would need neon.c for one
  # slice only: not supported, it gets the scalar path.
  list(LENGTH CMAKE_OSX_ARCHITECTURES _ol_osx_archs)
  if(_ol_osx_archs LESS 2)
    target_sources(ol_kernels PRIVATE ${_ol_kernels_dir}/neon.c)
    target_compile_definitions(ol_kernels PRIVATE OL_HAVE_NEON=1)
  endif()
endif()

set_target_properties(ol_kernels PROPERTIES
  POSITION_INDEPENDENT_CODE ON
  C_STANDARD 11
  C_STANDARD_REQUIRED ON
)
target_include_directories(ol_kernels PUBLIC ${_ol_kernels_dir})
target_compile_options(ol_kernels PRIVATE ${OL_WARNINGS})
# The kernels are the hot loops of the package: optimize them fully in
# every configuration but Debug (an unset build type would mean -O0).
# No -ffast-math: it would break the NaN ordering and IEEE propagation
# that kernels.h promises.
if(CMAKE_C_COMPILER_ID MATCHES "GNU|Clang")
  target_compile_options(ol_kernels PRIVATE $<$<NOT:$<CONFIG:Debug>>:-O3>)
endif()

if(UNIX)
  target_link_libraries(ol_kernels PRIVATE m)  # sqrt
endif()
