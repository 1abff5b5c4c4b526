# The two commands a new user needs (see README.md):
#   make image   build the default x86_64 node image into out/
#   make test    run the whole test suite (unit, integration, QEMU boots)
# Both install missing Debian packages first (root).

PROFILE ?= profiles/k8s-1.35-x86_64.toml
BUILD_ARGS ?=
CARGO ?= cargo

.PHONY: image test deps bins lint

deps:
	.ci/install-deps

bins:
	$(CARGO) build --release --workspace --bins

image: deps bins
	./target/release/nodeimage build $(PROFILE) $(BUILD_ARGS)

test: deps bins
	$(CARGO) test --release --workspace -- --nocapture --test-threads=2

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
