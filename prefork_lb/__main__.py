from prefork_lb.cli import main

if __name__ == "__main__":
    main()
