"""Science experiments (not tests, not the speed bench): each module says what it reproduces and how long
it takes; experiments/README.md lists them."""
