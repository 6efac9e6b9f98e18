// hypernet webui extension: client-side helpers are added with the extension UI.
