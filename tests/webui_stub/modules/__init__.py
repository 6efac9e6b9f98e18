"""Stand-in for the AUTOMATIC1111 webui's `modules` package (v1.10.1): only what hypernet/webui uses."""
