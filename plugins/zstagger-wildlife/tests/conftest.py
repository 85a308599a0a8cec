pytest_plugins = ["zstagger.testing"]
