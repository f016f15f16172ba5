"""Suite definitions (TOML), shipped as package data of `bench.suites`."""
