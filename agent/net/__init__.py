"""Getting a node on the network: NIC detection, links and addresses (netlink), DHCP."""
