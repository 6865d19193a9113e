# The C test of the vector kernels (every kernel on every ISA the CPU
# supports, against a double-precision reference).  Included from the
# top-level CMakeLists.txt inside if(OL_BUILD_TESTS), after kernels.cmake.

add_executable(test_kernels ${CMAKE_CURRENT_LIST_DIR}/test_kernels.c)
target_link_libraries(test_kernels PRIVATE ol_kernels)
set_target_properties(test_kernels PROPERTIES C_STANDARD 11)
target_compile_options(test_kernels PRIVATE ${OL_WARNINGS})
if(UNIX)
  target_link_libraries(test_kernels PRIVATE m)  # sqrt
endif()
add_test(NAME kernels COMMAND test_kernels)
# The same test with the ISA chosen through the environment: checks that
# OFFLOOP_ISA is honoured at the first call.
add_test(NAME kernels_isa_env_scalar COMMAND test_kernels)
set_tests_properties(kernels_isa_env_scalar
  PROPERTIES ENVIRONMENT "OFFLOOP_ISA=scalar")
# And with the ISA named that only aarch64 runs (elsewhere: the best one).
add_test(NAME kernels_isa_env_neon COMMAND test_kernels)
set_tests_properties(kernels_isa_env_neon
  PROPERTIES ENVIRONMENT "OFFLOOP_ISA=neon")

# The quantized kernels (bfloat16, int8) on every ISA, against a double
# reference computed from the codes.
add_executable(test_quant ${CMAKE_CURRENT_LIST_DIR}/test_quant.c)
target_link_libraries(test_quant PRIVATE ol_kernels)
set_target_properties(test_quant PROPERTIES C_STANDARD 11)
target_compile_options(test_quant PRIVATE ${OL_WARNINGS})
if(UNIX)
  target_link_libraries(test_quant PRIVATE m)
endif()
add_test(NAME quant_kernels COMMAND test_quant)
