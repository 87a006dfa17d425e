from iisan.cli import main

main()
