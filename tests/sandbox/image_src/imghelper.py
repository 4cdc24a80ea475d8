"""A local module shipped into an image with Image.add_local_python_source (tests)."""

VALUE = 42
