"""pytest fixtures that give a running emulator."""
