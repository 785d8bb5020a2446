"""A block-family plugin that cannot be imported (a missing dependency, say): the registry must report it and
still load every other plugin."""

raise ImportError("family_plugin_broken needs a package that is not installed")
