pytest_plugins = ["eventbus.testing.fixtures"]
