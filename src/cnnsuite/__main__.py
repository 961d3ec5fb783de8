from cnnsuite.cli import main

main()
