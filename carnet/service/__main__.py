from carnet.service.app import main

main()
