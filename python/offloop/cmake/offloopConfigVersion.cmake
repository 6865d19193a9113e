# The version of this offloop, read from offloop/__init__.py (the one place
# it is written).  Any 0.x release is compatible with a request for an
# older or equal 0.x; from 1.0 on, the same major version is.

file(STRINGS "${CMAKE_CURRENT_LIST_DIR}/../__init__.py" _offloop_line
     REGEX "^__version__ = ")
string(REGEX REPLACE "^__version__ = [\"']([^\"']+)[\"'].*" "\\1"
       PACKAGE_VERSION "${_offloop_line}")
unset(_offloop_line)

if(NOT PACKAGE_FIND_VERSION)
  set(PACKAGE_VERSION_COMPATIBLE TRUE)
elseif(PACKAGE_FIND_VERSION VERSION_GREATER PACKAGE_VERSION)
  set(PACKAGE_VERSION_COMPATIBLE FALSE)
else()
  string(REGEX MATCH "^[0-9]+" _have_major "${PACKAGE_VERSION}")
  set(PACKAGE_VERSION_COMPATIBLE FALSE)
  if(PACKAGE_FIND_VERSION_MAJOR EQUAL _have_major)
    set(PACKAGE_VERSION_COMPATIBLE TRUE)
  endif()
  unset(_have_major)
  if(PACKAGE_FIND_VERSION VERSION_EQUAL PACKAGE_VERSION)
    set(PACKAGE_VERSION_EXACT TRUE)
  endif()
endif()
