# amplitude_sync: PGXS build. `make && make install`, then `make installcheck`
# against a running cluster (test/run_tests.sh does all of it from scratch).
EXTENSION = amplitude_sync
MODULE_big = amplitude_sync
DATA = sql/amplitude_sync--1.0.sql sql/amplitude_sync--1.1.sql sql/amplitude_sync--1.0--1.1.sql

CORE_SRCS = $(sort $(wildcard src/core/*.cpp))
GLUE_SRCS = $(sort $(wildcard src/pg/*.cpp))
OBJS = $(CORE_SRCS:.cpp=.o) $(GLUE_SRCS:.cpp=.o)

# pg_regress scripts in sql/, expected output in expected/. The suite needs the
# mock server: test/run_tests.sh starts it and exports AMPLITUDE_MOCK_PORT.
REGRESS = setup acl connection types mapping batching rejections responses throttling pacing hostile identify group_identify syncs sync_state security sync_failures timeout interrupts outbox capture upgrade cron
REGRESS_OPTS = --load-extension=amplitude_sync

PG_CONFIG ?= pg_config
PG_INCLUDE_SERVER := $(shell $(PG_CONFIG) --includedir-server)

# PostgreSQL headers as system headers so -Werror applies to our code only.
PG_CPPFLAGS = -isystem $(PG_INCLUDE_SERVER) -Isrc/core
PG_CXXFLAGS = -std=c++17 -Wall -Wextra -Werror -Wno-register
SHLIB_LINK = -lstdc++ -lcurl -lxxhash

# No LLVM bitcode: it would need clang and ignores PG_CXXFLAGS.
override with_llvm = no

PGXS := $(shell $(PG_CONFIG) --pgxs)
include $(PGXS)

# Pure C++ core unit tests (GoogleTest); they never see postgres.h.
UNIT_TEST_BIN = test/unit/unit_tests
$(UNIT_TEST_BIN): $(CORE_SRCS) $(wildcard src/core/*.hpp) $(wildcard test/unit/*.cpp) $(wildcard test/unit/*.hpp)
	$(CXX) -std=c++17 -O1 -g -Wall -Wextra -Werror -Isrc/core -o $@ \
		$(sort $(wildcard test/unit/*.cpp)) $(CORE_SRCS) -lgtest -lgtest_main -lpthread -lcurl -lxxhash

.PHONY: unittest
unittest: $(UNIT_TEST_BIN)
	./$(UNIT_TEST_BIN)

clean: clean-unittest
.PHONY: clean-unittest
clean-unittest:
	rm -f $(UNIT_TEST_BIN)

# PGXS does not track header dependencies: rebuild everything when any header
# changes (a stale object with an old class layout crashes the backend).
$(OBJS): $(wildcard src/core/*.hpp src/pg/*.hpp)

# Long fault-injection test, not part of installcheck (see test/soak.sh).
.PHONY: soak
soak:
	./test/soak.sh
