"""What a job needs: the files its program, libraries, scripts and imports read."""
