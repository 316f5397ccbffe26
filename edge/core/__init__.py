"""Platform parts every room uses: config, errors, metrics, audit, names, systemd."""
