# Thin wrapper over CMake: `make run` and `make test` do every set-up step.
#   make run   install missing Debian packages, build into build/, start cqrsd
#              in the foreground (socket var/cqrsd.sock, data in var/data)
#   make test  the same set-up (the normal build in build/ included), then
#              every test through ctest, built with AddressSanitizer +
#              UndefinedBehaviorSanitizer (LeakSanitizer with it) in build-test/,
#              then `make fuzz`
#   make fuzz  libFuzzer harnesses (clang) in build-fuzz/, FUZZ_SECONDS (30)
#              of fuzzing per target (scripts/fuzz, tests/fuzz/README.md)
BUILD      ?= build
TEST_BUILD ?= build-test
JOBS       ?= $(shell nproc 2>/dev/null || echo 2)
FUZZ_SECONDS ?= 30

.PHONY: all deps build run test fuzz clean
all: build

deps:
	@scripts/install-deps

$(BUILD)/CMakeCache.txt: | deps
	cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=RelWithDebInfo

build: deps $(BUILD)/CMakeCache.txt
	cmake --build $(BUILD) -j $(JOBS)

run: build
	@mkdir -p var
	exec $(BUILD)/cqrsd --socket var/cqrsd.sock --data-dir var/data

$(TEST_BUILD)/CMakeCache.txt: | deps
	cmake -S . -B $(TEST_BUILD) -DCMAKE_BUILD_TYPE=Debug -DCQRS_SANITIZE=ON

test: build $(TEST_BUILD)/CMakeCache.txt
	cmake --build $(TEST_BUILD) -j $(JOBS)
	cd $(TEST_BUILD) && ctest --output-on-failure -j $(JOBS)
	$(MAKE) fuzz

fuzz: deps
	FUZZ_SECONDS=$(FUZZ_SECONDS) scripts/fuzz

clean:
	rm -rf $(BUILD) $(TEST_BUILD)
