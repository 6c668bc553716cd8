# Install rules and the CMake package, so that another project can do
#
#   find_package(specopt CONFIG REQUIRED)      # CMAKE_PREFIX_PATH=<install prefix>
#   target_link_libraries(app PRIVATE specopt::core)
#
# specopt_install(TARGET EXPORT_NAME [TARGET EXPORT_NAME ...]) installs the given library
# targets as specopt::<EXPORT_NAME>, the public headers (include/specopt) and
# <prefix>/lib/cmake/specopt/{specoptConfig,specoptConfigVersion,specoptTargets}.cmake.
# specoptConfig.cmake finds what the targets' interfaces name (Torch, fmt, nlohmann_json,
# toml++, ZLIB, Threads) with find_dependency. tests/consumer/ is the check
# (ctest -R Consumer: install into the build tree, build a one-file project against it, run it).
include(GNUInstallDirs)
include(CMakePackageConfigHelpers)

set(SPECOPT_INSTALL_CMAKEDIR "${CMAKE_INSTALL_LIBDIR}/cmake/specopt")

function(specopt_install)
  if(SPECOPT_DEPS_DIR)
    # The packed header-only dependencies are not installed with specopt: a consumer could
    # not find them again.
    message(STATUS "specopt: no install rules with SPECOPT_DEPS_DIR")
    return()
  endif()
  set(SPECOPT_HAVE_TOMLPLUSPLUS FALSE)
  if(TARGET tomlplusplus::tomlplusplus)
    set(SPECOPT_HAVE_TOMLPLUSPLUS TRUE)
  endif()
  set(targets)
  while(ARGN)
    list(POP_FRONT ARGN target export_name)
    set_target_properties(${target} PROPERTIES EXPORT_NAME ${export_name})
    # The headers need the standard the library was built with (C++17, or the found
    # LibTorch's: 20 for 2.x); TorchConfig.cmake's own record does not reach consumers.
    target_compile_features(${target} PUBLIC cxx_std_${CMAKE_CXX_STANDARD})
    target_include_directories(${target} PUBLIC $<INSTALL_INTERFACE:${CMAKE_INSTALL_INCLUDEDIR}>)
    list(APPEND targets ${target})
  endwhile()
  install(TARGETS ${targets} EXPORT specoptTargets
          ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR}
          LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR})
  install(DIRECTORY ${PROJECT_SOURCE_DIR}/include/specopt DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
  install(FILES ${PROJECT_SOURCE_DIR}/LICENSE DESTINATION ${CMAKE_INSTALL_DATADIR}/doc/specopt)
  install(EXPORT specoptTargets NAMESPACE specopt:: DESTINATION ${SPECOPT_INSTALL_CMAKEDIR})
  configure_package_config_file(${PROJECT_SOURCE_DIR}/cmake/specoptConfig.cmake.in
                                ${PROJECT_BINARY_DIR}/specoptConfig.cmake
                                INSTALL_DESTINATION ${SPECOPT_INSTALL_CMAKEDIR})
  # The ABI is tied to the LibTorch it was built with, so only the same minor version matches.
  write_basic_package_version_file(${PROJECT_BINARY_DIR}/specoptConfigVersion.cmake
                                   COMPATIBILITY SameMinorVersion)
  install(FILES ${PROJECT_BINARY_DIR}/specoptConfig.cmake ${PROJECT_BINARY_DIR}/specoptConfigVersion.cmake
          DESTINATION ${SPECOPT_INSTALL_CMAKEDIR})
endfunction()

# ctest Consumer.FindPackage (tests/consumer/run.cmake). The compiler launcher (ccache)
# is passed on so that CI reruns are cache hits.
function(specopt_add_consumer_test)
  if(SPECOPT_DEPS_DIR)
    return()
  endif()
  add_test(NAME Consumer.FindPackage
           COMMAND ${CMAKE_COMMAND} -DBUILD_DIR=${PROJECT_BINARY_DIR} -DSOURCE_DIR=${PROJECT_SOURCE_DIR}
                   "-DGENERATOR=${CMAKE_GENERATOR}" "-DLAUNCHER=${CCACHE_PROGRAM}"
                   -P ${PROJECT_SOURCE_DIR}/tests/consumer/run.cmake)
  set_tests_properties(Consumer.FindPackage PROPERTIES ENVIRONMENT "OMP_NUM_THREADS=1"
                       PASS_REGULAR_EXPRESSION "consumer: SpectralAdamW")
endfunction()
