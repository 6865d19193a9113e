# CMake package config for offloop's C API (include/offloop.h).
#
#   execute_process(COMMAND "${Python_EXECUTABLE}" -m offloop --cmake-dir
#                   OUTPUT_VARIABLE offloop_DIR
#                   OUTPUT_STRIP_TRAILING_WHITESPACE)
#   find_package(offloop CONFIG REQUIRED)
#   target_link_libraries(my_ext PRIVATE offloop::headers)
#
# offloop::headers is header-only: the API is a table read at run time from
# the capsule offloop._core._C_API, so there is no library to link.  It
# defines offloop_INCLUDE_DIR too.

get_filename_component(_offloop_pkg "${CMAKE_CURRENT_LIST_DIR}/.." ABSOLUTE)
if(EXISTS "${_offloop_pkg}/include/offloop.h")
  # An installed wheel: offloop/include/offloop.h beside this folder.
  set(offloop_INCLUDE_DIR "${_offloop_pkg}/include")
elseif(EXISTS "${_offloop_pkg}/../../include/offloop.h")
  # An editable install: python/offloop/cmake in the source tree.
  get_filename_component(offloop_INCLUDE_DIR
                         "${_offloop_pkg}/../../include" ABSOLUTE)
else()
  set(offloop_FOUND FALSE)
  set(offloop_NOT_FOUND_MESSAGE
      "offloop.h not found beside ${CMAKE_CURRENT_LIST_DIR}; reinstall offloop")
  return()
endif()
unset(_offloop_pkg)

if(NOT TARGET offloop::headers)
  add_library(offloop::headers INTERFACE IMPORTED)
  set_target_properties(offloop::headers PROPERTIES
    INTERFACE_INCLUDE_DIRECTORIES "${offloop_INCLUDE_DIR}")
endif()
set(offloop_FOUND TRUE)
