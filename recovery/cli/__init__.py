"""`recovery-cli`: one module per command group (`main` builds the group and registers the
others); shared helpers live in `common`."""
