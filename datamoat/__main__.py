from datamoat.cli import main

main()
