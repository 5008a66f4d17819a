"""The library: typed configs and process groups in, no argparse, no global state, no print."""
