# ctest Consumer.FindPackage: install the build tree into BUILD_DIR/consumer/prefix, configure
# and build tests/consumer against it with find_package(specopt CONFIG), run it.
#   cmake -DBUILD_DIR=<build> -DSOURCE_DIR=<checkout> -DGENERATOR=<gen> [-DLAUNCHER=ccache] -P run.cmake
set(work ${BUILD_DIR}/consumer)
file(REMOVE_RECURSE ${work})
function(run what)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "consumer test: ${what} failed (${rc}): ${ARGN}")
  endif()
endfunction()
run("install" ${CMAKE_COMMAND} --install ${BUILD_DIR} --prefix ${work}/prefix)
set(configure ${CMAKE_COMMAND} -S ${SOURCE_DIR}/tests/consumer -B ${work}/build -G ${GENERATOR}
    -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH=${work}/prefix)
if(LAUNCHER)
  list(APPEND configure -DCMAKE_CXX_COMPILER_LAUNCHER=${LAUNCHER})
endif()
run("configure" ${configure})
run("build" ${CMAKE_COMMAND} --build ${work}/build)
run("run" ${work}/build/consumer)
