"""``python -m app fit|validate|test|predict --config configs/<file>.yaml`` (see README)."""

from app.cli import main

if __name__ == "__main__":
    main()
