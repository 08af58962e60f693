# iommu_add_test(NAME <name> SOURCES <files...> [DEPS <targets...>] [LABELS <labels...>])
#
# Builds one GoogleTest binary and registers its tests with CTest. Label
# `concurrency` marks the tests the ThreadSanitizer build runs.
function(iommu_add_test)
  cmake_parse_arguments(ARG "" "NAME" "SOURCES;DEPS;LABELS" ${ARGN})
  add_executable(${ARG_NAME} ${ARG_SOURCES})
  target_link_libraries(${ARG_NAME} PRIVATE ${ARG_DEPS} iommu_warnings GTest::gtest GTest::gmock
                        GTest::gtest_main)
  gtest_discover_tests(${ARG_NAME} DISCOVERY_TIMEOUT 60 PROPERTIES LABELS "${ARG_LABELS}")
endfunction()
