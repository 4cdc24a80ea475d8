"""One router per console section, each thin over the services the API uses."""
