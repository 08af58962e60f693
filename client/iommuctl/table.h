// An aligned text table, as iommuctl prints by default: columns padded to
// their widest cell and separated by two spaces, no trailing blanks.
//
//   Table table({"ID", "POLICY"});
//   table.AddRow({"vm1", "fast"});
//   std::cout << table.Render();   // "ID   POLICY\nvm1  fast\n"
//
// A table made without a header prints only its rows (key/value listings).
//
// Thread-safety: not thread-safe; one thread builds and renders a table.
#ifndef IOMMU_BROKER_CLIENT_IOMMUCTL_TABLE_H_
#define IOMMU_BROKER_CLIENT_IOMMUCTL_TABLE_H_

#include <string>
#include <vector>

namespace iommu_broker::iommuctl {

class Table final {
 public:
  using Row = std::vector<std::string>;

  explicit Table(Row header = {});

  // Rows shorter than others are padded with empty cells.
  void AddRow(Row row);
  bool empty() const { return rows_.size() == (has_header_ ? 1 : 0); }
  std::string Render() const;

 private:
  bool has_header_;
  std::vector<Row> rows_;  // the header first, if any
};

}  // namespace iommu_broker::iommuctl

#endif  // IOMMU_BROKER_CLIENT_IOMMUCTL_TABLE_H_
