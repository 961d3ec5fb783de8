from cnnsuite.commands import main

main()
