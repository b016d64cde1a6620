"""The `kubetune` command line. Heavy libraries are imported inside the modes that need them."""
